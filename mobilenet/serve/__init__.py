"""`mobilenet serve`: a classifier or detector behind a JSON API and one web page.

``pip install 'mobilenet[serve]'`` brings Starlette, Uvicorn and python-multipart. ``model`` loads what is
served (PyTorch or exported), ``batcher`` turns concurrent requests into batches, ``app`` is the HTTP app
(the reasons for an ASGI stack are in its doc) and ``page.html`` the page.
"""
