"""BibTeX entries cited by the models of this pack."""

TIMM = """@misc{rw2019timm,
  author = {Ross Wightman},
  title = {PyTorch Image Models},
  year = {2019},
  publisher = {GitHub},
  journal = {GitHub repository},
  doi = {10.5281/zenodo.4414861},
  howpublished = {\\url{https://github.com/huggingface/pytorch-image-models}}
}"""

RESNET = """@inproceedings{he2016deep,
  title = {Deep Residual Learning for Image Recognition},
  author = {He, Kaiming and Zhang, Xiangyu and Ren, Shaoqing and Sun, Jian},
  booktitle = {Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition},
  pages = {770--778},
  year = {2016}
}"""

DENSENET = """@inproceedings{huang2017densely,
  title = {Densely Connected Convolutional Networks},
  author = {Huang, Gao and Liu, Zhuang and van der Maaten, Laurens and Weinberger, Kilian Q.},
  booktitle = {Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition},
  pages = {4700--4708},
  year = {2017}
}"""

EFFICIENTNET = """@inproceedings{tan2019efficientnet,
  title = {EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks},
  author = {Tan, Mingxing and Le, Quoc},
  booktitle = {International Conference on Machine Learning},
  pages = {6105--6114},
  year = {2019}
}"""

CONVNEXT = """@inproceedings{liu2022convnet,
  title = {A ConvNet for the 2020s},
  author = {Liu, Zhuang and Mao, Hanzi and Wu, Chao-Yuan and Feichtenhofer, Christoph and
            Darrell, Trevor and Xie, Saining},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition},
  pages = {11976--11986},
  year = {2022}
}"""

VIT = """@inproceedings{dosovitskiy2021image,
  title = {An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale},
  author = {Dosovitskiy, Alexey and Beyer, Lucas and Kolesnikov, Alexander and
            Weissenborn, Dirk and Zhai, Xiaohua and Unterthiner, Thomas and Dehghani, Mostafa
            and Minderer, Matthias and Heigold, Georg and Gelly, Sylvain and Uszkoreit, Jakob
            and Houlsby, Neil},
  booktitle = {International Conference on Learning Representations},
  year = {2021}
}"""
