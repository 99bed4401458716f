"""cpgformer.io"""
