"""BibTeX entries of the transformers-layout models in this pack (Phikon, Phikon-v2, PLIP)."""

PHIKON = """@article{filiot2023scaling,
  title = {Scaling Self-Supervised Learning for Histopathology with Masked Image Modeling},
  author = {Filiot, Alexandre and Ghermi, Ridouane and Olivier, Antoine and Jacob, Paul and
            Fidon, Lucas and Mac Kain, Alice and Saillard, Charlie and
            Schiratti, Jean-Baptiste},
  journal = {medRxiv},
  year = {2023},
  doi = {10.1101/2023.07.21.23292757}
}"""

PHIKON_V2 = """@article{filiot2024phikonv2,
  title = {Phikon-v2, A large and public feature extractor for biomarker prediction},
  author = {Filiot, Alexandre and Jacob, Paul and Mac Kain, Alice and Saillard, Charlie},
  journal = {arXiv preprint arXiv:2409.09173},
  year = {2024}
}"""

PLIP = """@article{huang2023visual,
  title = {A visual--language foundation model for pathology image analysis using medical
           Twitter},
  author = {Huang, Zhi and Bianchi, Federico and Yuksekgonul, Mert and Montine, Thomas J. and
            Zou, James},
  journal = {Nature Medicine},
  volume = {29},
  number = {9},
  pages = {2307--2316},
  year = {2023},
  doi = {10.1038/s41591-023-02504-3}
}"""
