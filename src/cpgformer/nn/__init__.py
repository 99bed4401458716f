"""cpgformer.nn"""
