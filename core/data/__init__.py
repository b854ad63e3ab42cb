"""The data: the CS231n COCO layout, image features (VGG16 fc7, regions, PCA), building a
dataset."""
