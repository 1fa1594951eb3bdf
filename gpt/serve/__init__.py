"""Serving a checkpoint over the OpenAI API: `python -m gpt.serve --ckpt OUT`.

Its place in the flow: the last step, beside sampling. A checkpoint loaded by gpt/checkpoint.py (and made
cheaper by gpt/inference.py) answers HTTP requests; every request in flight is decoded in one batch by
the same decoding code as sample.py (gpt/decoding.py):

    HTTP request ─app.py─▶ checked (protocol.py) ─▶ job ─engine.py─▶ Decoder rows ─▶ tokens ─▶ events ─▶ JSON / SSE

The page at / (web/: plain HTML, CSS and JavaScript) is a client of the same API, for people.

Training and sampling never import this package; its web stack (Starlette, uvicorn) is the optional
extra `pip install -e ".[serve]"`.
"""
