"""The example shop on Django (see ``manage.py``)."""
