"""OCI artifacts (adapter push, pull, inspect) and data fetching: one home for the tools image and the CLI.

Modules, from the wire up (none imports torch: this runs in the slim tools image):

- ``errors``      the exception hierarchy; every message is one line fit for a Workspace status
- ``mediatypes``  media types and annotation keys of the two layouts (ModelPack, KAITO) and why
- ``reference``   ``registry/repository:tag|@digest`` as a value object
- ``credentials`` dockerconfigjson entries matched to a registry, secrets kept out of messages
- ``registry``    the distribution client: auth challenges, retries, chunked resumable upload,
                  verified streaming download
- ``layout``      the config blobs and manifests, as pure functions
- ``tarlayer``    KAITO's ``/data`` tar+gzip layer: reproducible writing, safe streaming extraction
- ``push``/``pull`` the operations (pull also serves data images and ``inspect``)
- ``hosts``       the SSRF host policy, pure (shared with the Workspace validator)
- ``fetch``       tuning-input URL downloads
- ``cli``         ``kaito-tune push | pull | inspect | fetch-data``
"""
