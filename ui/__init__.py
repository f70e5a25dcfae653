"""The Gradio pages of ``app.py``, by part: :mod:`ui.common` (style, the streaming loop, upload
helpers) and :mod:`ui.playground` (the Playground tab). The core ``mgpo`` never imports gradio."""
