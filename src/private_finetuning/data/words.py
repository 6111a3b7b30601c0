"""English closed-class words: what carries a sentence's grammar rather than its facts.

Shared by the question variants (data/augment.py: a keyword query leaves them out) and the derived
facts of a reply (data/expected.py: a word the question did not say is a fact unless it is one of
these). Nothing here knows any one domain.
"""

from __future__ import annotations

# Articles, auxiliaries, pronouns, prepositions, wh-words. Words that carry a question's meaning
# ("many", "much", "far", "long") are not here.
_FUNCTION_WORDS = """
a an the this that these those is are was were be been being am do does did have has had can could will would
shall should may might must i me my we our you your it its they their he she his her what which who whom whose
where when why how of for in on at to from by with about into onto as than then there here please tell
and or but if so some any one
"""
FUNCTION_WORDS = frozenset(_FUNCTION_WORDS.split())

# What a reply adds around its fact without stating one: polarity, hedges, courtesy, and verbs of
# having and being in other forms. A reply's new word from this list is not a fact.
_FILLER_WORDS = """
yes yeah yep no nope not also just only very really quite all each every both either neither nor none
us them him hers ours yours theirs mine myself yourself itself ourselves themselves
isn't aren't wasn't weren't don't doesn't didn't can't cannot won't wouldn't shouldn't couldn't
get gets got getting make makes made give gives given take takes took need needs use uses used
sure thanks thank welcome hello hi course certainly indeed currently usually always often
available provide provides provided offer offers offered include includes including
like other another such same more most less least way ways thing things there's it's that's
"""
STOP_WORDS = FUNCTION_WORDS | frozenset(_FILLER_WORDS.split())

# Units, currencies and clock words written in capitals: they qualify a number, they are not a name.
_UNIT_WORDS = """
usd eur gbp chf jpy cny cad aud inr sek nok dkk pln czk huf rub brl mxn zar
am pm utc gmt cet cest est edt pst pdt ist
kb mb gb tb kbps mbps gbps km kg cm mm ml hz khz mhz ghz kw kwh
"""
UNIT_WORDS = frozenset(_UNIT_WORDS.split())
