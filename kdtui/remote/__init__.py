"""Remote runs over SSH: hosts, the connection, the dispatch stages, the manifest, and a
RunSource that follows a run's files over SFTP and survives dropped connections."""
