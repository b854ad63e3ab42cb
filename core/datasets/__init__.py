"""Dataset download scripts and generators of data in the CS231n COCO captioning layout."""
