"""SIGTERM (an eviction, a drain) stops any stage cleanly: exit 5, which the Jobs ignore, and nothing partial."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from helpers import write_config
from private_finetuning.artifacts.store import STAGING

STAGE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from private_finetuning.stages.common import relocate, run_stage

    def body(ctx):
        def write(folder):
            (folder / "half.bin").write_bytes(b"x" * 1000)
            print("writing", flush=True)
            time.sleep(60)
            return "never", {}, {}
        relocate(ctx, volume=Path(sys.argv[2]), artifact="thing", kind="thing", fp="f", write=write)

    sys.exit(run_stage("test-stage", "a stage killed halfway", body, None, ["--config", sys.argv[1]]))
""")


def test_sigterm_halfway_through_a_publish_exits_5_and_publishes_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path / "p.yaml", {})
    volume = tmp_path / "volume"
    stage = subprocess.Popen([sys.executable, "-c", STAGE, str(config), str(volume)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert stage.stdout is not None and stage.stdout.readline().strip() == "writing"
    stage.send_signal(signal.SIGTERM)
    _, err = stage.communicate(timeout=30)
    assert stage.returncode == 5, err
    assert "stopped by SIGTERM before finishing; nothing partial was published" in err
    assert "discarded the staged thing" in err
    assert not (volume / "thing").exists()
    assert [p.name for p in (volume / STAGING).iterdir()] == []
