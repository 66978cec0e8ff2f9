"""BibTeX entries of the timm-based models in this pack."""

UNI = """@article{chen2024uni,
  title = {Towards a general-purpose foundation model for computational pathology},
  author = {Chen, Richard J. and Ding, Tong and Lu, Ming Y. and Williamson, Drew F. K. and
            Jaume, Guillaume and Song, Andrew H. and Chen, Bowen and Zhang, Andrew and
            Shao, Daniel and Shaban, Muhammad and others},
  journal = {Nature Medicine},
  volume = {30},
  number = {3},
  pages = {850--862},
  year = {2024},
  doi = {10.1038/s41591-024-02857-3}
}"""

VIRCHOW2 = """@article{zimmermann2024virchow2,
  title = {Virchow2: Scaling Self-Supervised Mixed Magnification Models in Pathology},
  author = {Zimmermann, Eric and Vorontsov, Eugene and Viret, Julian and Casson, Adam and
            Zelechowski, Michal and Shaikovski, George and Tenenholtz, Neil and Hall, James
            and Klimstra, David and Yousfi, Razik and Fuchs, Thomas and Fusi, Nicolo and
            Liu, Siqi and Severson, Kristen},
  journal = {arXiv preprint arXiv:2408.00738},
  year = {2024}
}"""

GIGAPATH = """@article{xu2024gigapath,
  title = {A whole-slide foundation model for digital pathology from real-world data},
  author = {Xu, Hanwen and Usuyama, Naoto and Bagga, Jaspreet and Zhang, Sheng and
            Rao, Rajesh and Naumann, Tristan and Wong, Cliff and Gero, Zelalem and
            Gonz{\\'a}lez, Javier and Gu, Yu and others},
  journal = {Nature},
  volume = {630},
  number = {8015},
  pages = {181--188},
  year = {2024},
  doi = {10.1038/s41586-024-07441-w}
}"""
