"""Exports of a promoted adapter that run outside this project: a merged model, GGUF files, an Ollama
Modelfile and a model card. One module each; ``stages/model_export.py`` is the recipe that uses them."""
