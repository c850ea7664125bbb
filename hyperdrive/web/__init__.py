"""The dashboard: server-rendered pages on the API port for admirals signed in with a token.

routes.py (the pages and the live stream), sessions.py (sign-in, cookies, CSRF),
history.py (each app's recent deploys, from the event stream), views.py (what pages show);
templates/ (jinja2) and static/ (one stylesheet, one small script, no build step, no CDN).
"""
