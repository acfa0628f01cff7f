"""The offline end-to-end demo: synthetic pool -> score -> filter -> reshard, judged against the truth."""
