"""Foundations every layer uses: errors, limits on values read or given, the input spec.

- ``errors``: :class:`CaswitError` and its kinds, one line each for the user;
- ``limits``: declared bounds on command settings and on values read from
  files (checkpoint headers, class tables, input specs), checked before use;
- ``spec``: the input spec (bands, scale, normalisation, GSD), the class
  table, and the one dtype-against-scale rule that predict and train share;
- ``lazy``: names a package exports but imports on first use (the public
  API and ``engine.predict`` stay light for the CLI's start-up).

May import: nothing of caswit_geo (the standard library and numpy only).
"""
