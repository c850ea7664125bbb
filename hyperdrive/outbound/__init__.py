"""Telling the outside world how deploys went: commit statuses on the app's forge and signed
`notify` POSTs. Deliveries are journalled before they are tried, retried with backoff, and sent
by a background task, so a slow or broken receiver never delays a deploy."""
