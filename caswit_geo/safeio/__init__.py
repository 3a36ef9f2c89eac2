"""File safety: no partial output, no input replaced, no litter outliving a killed run.

One protocol, bottom up (docs/ARCHITECTURE.md draws it):

- ``liveness``: process tokens and per-folder ``flock`` liveness locks; a lock
  that can be taken proves its owner dead;
- ``files``: hidden temporary names beside their destination, no-replace
  renames, fsync;
- ``claims``: one run writes a destination at a time (process and job claims);
- ``sweep``: a dead owner's temporaries, claims and moved-aside outputs are
  removed (or put back) before a folder is held;
- ``writes``: whole-or-nothing writes of one file (``atomic_path``, with fsync);
- ``outputs``: :class:`OutputSet`, the outputs of a command, checked and
  claimed at start, committed together;
- ``signals``: SIGTERM unwinds like Ctrl-C; the training loop stops gracefully.

May import: core.
"""
