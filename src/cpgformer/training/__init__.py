"""cpgformer.training"""
