"""Faces: Action Unit conventions, face detection, landmarks, cropping and the background condition."""
