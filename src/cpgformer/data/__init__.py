"""cpgformer.data"""
