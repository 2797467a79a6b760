"""``dalle serve``: an HTTP API and a self-contained web page over one loaded pipeline.

``app`` builds the FastAPI app (routes, errors, the progress stream), ``worker`` runs
generation on one thread behind a bounded queue, ``schemas`` holds the request and response
bodies, ``uploads`` checks and decodes a picture sent to complete, and ``page.html`` is the
page. Needs the ``[serve]`` extra (FastAPI, uvicorn).
"""
