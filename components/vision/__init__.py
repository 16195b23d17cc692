"""Vision pipeline components, one subpackage per family, each with its stage in `stage.py`:

data         image data sets: real MNIST digits, generated shapes (boxes, captions),
             any folder of PNG/JPEG files; stored as Parquet + meta.json (+ COCO JSON)
                                                   stages "vision.images", "vision.image_folder"
autoencoder  KL-VAE / VQ-VAE image autoencoders    stage "vision.autoencoder"

grid.py      image grids and deterministic PNG bytes, shared by the stages' logged figures
"""
