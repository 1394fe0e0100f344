// Package kmipclient talks KMIP 1.1+ over mutual TLS to one or more key
// servers (create/activate/get/locate/revoke/destroy, ordered failover,
// timeouts, bounded retries) and maps KMIP result reasons to sentinel errors.
package kmipclient
