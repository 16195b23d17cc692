"""Real English text that ships with Python itself, so the default pipeline builds offline.

config.py     StdlibTextConfig
documents.py  pydoc topics, stdlib docstrings and comments as (doc_id, text); the files
stage.py      stage "text.stdlib_text"
"""
