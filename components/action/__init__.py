"""Online action detection: label the current frame of a video stream from its past alone.

config.py    the stages' sections
streams.py   generated video streams of the shapes performing actions (labels per frame)
"""
