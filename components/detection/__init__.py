"""Object detection, set-prediction style (DETR): boxes, matching, loss.

boxes.py      box formats (cxcywh, xyxy, COCO xywh), area, pairwise IoU and generalized IoU
matcher.py    HungarianMatcher: the one-to-one query <-> target assignment per image
criterion.py  SetCriterion: classification, L1 and GIoU terms on the matched pairs, for the
              last decoder layer, each earlier layer ("aux") and denoising queries ("dn")
"""
