"""`kubetune dashboard`: a read-only web view of FineTuneJobs, on a cluster or from local runs.

Server-rendered HTML (aiohttp, which the operator image already ships through Kopf) with charts drawn
as inline SVG on the server: no JavaScript library, no CDN, nothing to fetch in an air-gapped cluster.
`jobs` gathers what there is to show (a `JobView` per job), `charts` draws it, `pages` writes the HTML
(every value escaped), `server` serves it.
"""
