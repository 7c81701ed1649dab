"""A BIDS App: ``dglandmark bids BIDS_DIR OUTPUT_DIR participant|group`` (Qt-free).

``dataset`` reads a BIDS dataset (sessions, entities, ``.bidsignore``) without pybids; ``naming``
builds the derivative's file names; ``participant`` detects and writes one BIDS derivative per
image (one image in memory at a time); ``snapshot`` draws the three-plane QC picture; ``report``
renders the group HTML report from the derivative alone; ``cli`` is the command line.
"""
