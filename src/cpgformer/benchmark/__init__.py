"""cpgformer.benchmark"""
