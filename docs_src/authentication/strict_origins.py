from wsroom import ConnectionManager, OriginPolicy

manager = ConnectionManager(allowed_origins=["https://app.example.com"])
manager.origins = OriginPolicy(["https://app.example.com"], allow_missing=False)
