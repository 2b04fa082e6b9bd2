"""The `fedfhe-owner predict` process: keys, encryption, the inference client, decoding."""
