"""``voxgate bench load``: a Twilio Media Streams load generator and capacity finder."""
