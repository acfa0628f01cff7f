"""The bottom layer, what every other layer uses: the record schema, image decoding and sniffing,
byte ranges, one atomic write, progress bars, worker processes that die with their parent, and the
report writer. It imports nothing else of vlcurate."""
