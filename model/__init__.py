"""VideoReward: Qwen2-VL with a linear reward head, scoring (video, prompt) pairs.

The library has no HTTP and no training loop. The one path from bytes to scores::

    model.video    decode (PyAV), sample frames, resize          -> DecodedVideo
    model.inputs   prompt template + chat template + processor   -> PreparedItem
    model.inputs   collate (right padding)                       -> Batch
    model.modeling padded forward pass, pooling, rm_head         -> raw rewards [B, 3]
    model.scorer   normalisation and Overall                     -> Score
"""
