package main

import "fmt"

// plural is "1 object" or "N objects": the count with the noun in the
// form it takes ("1 objects" reads as a bug).
func plural[T ~int | ~int64 | ~uint64](n T, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
