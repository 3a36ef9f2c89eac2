"""``train`` and ``pretrain``: run directories, the epoch loop, resumable state.

- ``config``: run settings and config files (JSON/TOML), merged with the CLI;
- ``inputs``: the input spec of a run, checked against the data;
- ``rundir``, ``runstate``: the run folder and what ``--resume`` continues;
- ``loop``, ``optim``: data loaders, the epoch loop, AdamW and its schedule;
- ``training``, ``pretraining``: the two engines (supervised, SimMIM);
- ``curves``, ``reconstructions``: the PNGs a run leaves.
"""
