"""The daemon's HTTP listener: OpenAI's API over the session layer (``modeld serve
--http-listen``). ``_app`` says how the app is put together and how another API plugs in.

Nothing is imported here: the daemon checks ``--http-listen`` (``_listen``) without loading
FastAPI, which loads only when the listener starts.
"""
