"""The inference server's routes, one blueprint per audience: operators, the seed's /prompt, OpenAI clients."""
