"""Detection data: generated sets with exact boxes, any COCO folder, box-safe augmentation.

config.py       DetectionDataConfig (shapes-det | digits-det), OnBadAnnotation
synthetic.py    shapes-det (many shapes, some occluded) and digits-det (real MNIST digits on
                a canvas, train and val from disjoint handwriting): pixels + boxes
coco_folder.py  any COCO instances JSON + images folder, validated; category ids -> 0..K-1
augment.py      horizontal flip, scale jitter, random crop on (image, boxes, labels), Compose
dataset.py      DetectionRecord, DetectionDataset (normalised image + DETR target), collate
"""
