package main

import "testing"

func TestDocIndex(t *testing.T) {
	for _, tc := range []struct {
		id   string
		want int
		ok   bool
	}{
		{docID(0), 0, true},
		{docID(199), 199, true},
		{docID(99999), 99999, true},
		{"d0012", 0, false},
		{"x00012", 0, false},
		{"d+0012", 0, false},
		{"d0001a", 0, false},
		{"_design/x", 0, false},
	} {
		got, ok := docIndex(tc.id)
		if got != tc.want || ok != tc.ok {
			t.Errorf("docIndex(%q) = %d, %v; want %d, %v", tc.id, got, ok, tc.want, tc.ok)
		}
	}
}

func TestListedIDs(t *testing.T) {
	row := func(id string) string { return `{"id":"` + id + `","key":"` + id + `","value":{"rev":"1-a"}}` }
	for _, tc := range []struct {
		name string
		body string
		docs int
		want int
	}{
		{"all", `{"total_rows":3,"offset":0,"rows":[` + row("d00000") + "," + row("d00001") + "," + row("d00002") + "]}\n", 3, 3},
		{"missing one", `{"total_rows":2,"offset":0,"rows":[` + row("d00000") + "," + row("d00002") + "]}", 3, 2},
		{"listed twice counts once", `{"rows":[` + row("d00001") + "," + row("d00001") + "]}", 3, 1},
		{"beyond the loaded ones", `{"rows":[` + row("d00000") + "," + row("d00007") + "]}", 3, 1},
		{"other ids", `{"rows":[` + row("_design/x") + "," + row("zzz") + "]}", 3, 0},
		{"cut short", `{"rows":[` + row("d00000") + `,{"id":"d000`, 3, 1},
		{"error body", `{"error":"not_found","reason":"Database does not exist."}`, 3, 0},
		{"empty", ``, 3, 0},
	} {
		if got := listedIDs([]byte(tc.body), tc.docs); got != tc.want {
			t.Errorf("%s: listedIDs = %d, want %d", tc.name, got, tc.want)
		}
	}
}
