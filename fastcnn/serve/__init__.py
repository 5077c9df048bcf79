"""``fastcnn-serve MODEL``: a local web page where you draw a digit (or drop an image) and watch the
network read it, and the JSON API beside it (``POST /api/predict``). Needs the ``serve`` extra
(``pip install 'fastcnn[serve]'``: Starlette and Uvicorn).

* :mod:`fastcnn.serve.predict`: image bytes -> prepared input, prediction, maps, saliency (no web);
* :mod:`fastcnn.serve.app`: the Starlette application (page, assets, API, limits);
* :mod:`fastcnn.serve.cli`: the command (load, compile the kernels, listen, stop on Ctrl-C).
"""
