"""UPerNet-Swin checkpoints (transformers' and mmsegmentation's) as a starting point.

- ``source``: reads a checkpoint file or folder and names its format;
- ``keys``: maps its keys onto CASWiT's encoders and decoder.
"""
