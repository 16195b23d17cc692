"""The evaluation feature network: a small image classifier trained on the real images, whose
pooled features are the space Fréchet distances are measured in and whose heads read back what
an image shows (a digit's class; a shapes image's shapes, colours, sizes and object count).
Standard Inception-FID weights cannot be had offline; this is Loom's own, a stage of the DAG.

    heads.py   what the heads predict, the targets of a caption, and matching a prediction
    config.py  the stage's section
    model.py   the network (no I/O)
    task.py    the training engine's Task
    saved.py   `FeatureNet`: network + heads + save format; features() and predict()
    stage.py   stage "vision.feature_net"
"""
