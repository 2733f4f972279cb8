"""text-embeddings-inference's routes: /embed, /rerank, /predict, /tokenize, /info.

TEI serves one model per server; ortserve serves many, so each text model is also a TEI server of its
own under `/tei/{model}` (point a TEI client at that base URL). The root routes take the model from the
body's `model` (an ortserve addition), or serve the one loaded model that fits the route."""
