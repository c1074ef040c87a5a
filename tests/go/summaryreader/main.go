// summaryreader reads a summary.json the way Fuchsia's Go tools do and prints what
// they see, so the harness's tests can check that its summary.json means to them
// what it means to the harness.
//
// The types below are Fuchsia's, copied field for field and tag for tag from:
//   - tools/testing/runtests/runtests.go (TestSummary, DataSink, DataSinkMap,
//     TestDetails, TestResult, FailureReasonError, FailureReason, TestCaseResult)
//   - tools/build/test_list.go (TestTag)
//   - tools/integration/testsharder/metadata/metadata.go (TestMetadata)
//
// Decoding is what tools/testing/resultdb/lib.go's ParseSummary does: plain
// json.Unmarshal, unknown fields ignored (so the harness's own `harness` key is
// allowed) and every declared field strictly typed (a string where Go expects an
// object or a float where it expects an integer fails the whole file).
//
// Usage: summaryreader SUMMARY_JSON. Prints a JSON digest on stdout; on any
// decoding error prints it on stderr and exits 1. Standard library only.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"time"
)

// TestStatus is the exit status of a test (runtests.go).
type TestStatus string

// The statuses runtests.go declares.
const (
	TestSuccess      TestStatus = "PASS"
	TestFailure      TestStatus = "FAIL"
	TestAborted      TestStatus = "ABORT"
	TestSkipped      TestStatus = "SKIP"
	TestInfraFailure TestStatus = "INFRA_FAIL"
	TestExonerated   TestStatus = "EXONERATED"
)

// TestTag represents arbitrary test metadata (tools/build/test_list.go).
type TestTag struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// TestMetadata (tools/integration/testsharder/metadata/metadata.go).
type TestMetadata struct {
	Owners      []string `json:"owners,omitempty"`
	ComponentID int      `json:"component_id,omitempty"`
}

// TestSummary (runtests.go).
type TestSummary struct {
	Tests   []TestDetails     `json:"tests"`
	Outputs map[string]string `json:"outputs,omitempty"`
}

// DataSink (runtests.go).
type DataSink struct {
	Name string `json:"name"`
	File string `json:"file"`
}

// DataSinkMap (runtests.go).
type DataSinkMap map[string][]DataSink

// TestDetails (runtests.go).
type TestDetails struct {
	TestResult

	Name                 string       `json:"name"`
	GNLabel              string       `json:"gn_label"`
	SourceLabel          string       `json:"source_label"`
	Status               TestStatus   `json:"result"`
	DataSinks            DataSinkMap  `json:"data_sinks,omitempty"`
	StartTime            time.Time    `json:"start_time"`
	EndTime              time.Time    `json:"-"`
	DurationMillis       int64        `json:"duration_milliseconds"`
	IsTestingFailureMode bool         `json:"is_testing_failure_mode"`
	Affected             bool         `json:"affected"`
	Tags                 []TestTag    `json:"tags"`
	Metadata             TestMetadata `json:"metadata,omitempty"`
	RunIndex             int          `json:"-"`
	Stdio                []byte       `json:"-"`
	IsMultipliedRun      bool         `json:"-"`
}

// TestResult (runtests.go).
type TestResult struct {
	OutputFiles   []string         `json:"output_files"`
	OutputDir     string           `json:"output_dir"`
	Cases         []TestCaseResult `json:"cases"`
	FailureReason *FailureReason   `json:"failure_reason,omitempty"`
}

// FailureReasonError (runtests.go).
type FailureReasonError struct {
	Message string `json:"message,omitempty"`
	Trace   string `json:"trace,omitempty"`
}

// FailureReason (runtests.go).
type FailureReason struct {
	Errors               []*FailureReasonError `json:"errors,omitempty"`
	TruncatedErrorsCount int32                 `json:"truncated_errors_count,omitempty"`
}

// TestCaseResult (runtests.go).
type TestCaseResult struct {
	DisplayName   string         `json:"display_name"`
	SuiteName     string         `json:"suite_name"`
	CaseName      string         `json:"case_name"`
	Status        TestStatus     `json:"status"`
	Duration      time.Duration  `json:"duration_nanos"`
	Format        string         `json:"format"`
	FailureReason *FailureReason `json:"failure_reason,omitempty"`
	OutputFiles   []string       `json:"output_files,omitempty"`
	OutputDir     string         `json:"output_dir,omitempty"`
	Tags          []TestTag      `json:"tags"`
}

// The digest: what a Go reader sees, in a form the Python test compares.

type reasonDigest struct {
	Present   bool     `json:"present"`
	Messages  []string `json:"messages"`
	Traces    []string `json:"traces"`
	Truncated int32    `json:"truncated_errors_count"`
}

type caseDigest struct {
	DisplayName   string       `json:"display_name"`
	SuiteName     string       `json:"suite_name"`
	CaseName      string       `json:"case_name"`
	Status        string       `json:"status"`
	DurationNanos int64        `json:"duration_nanos"`
	Format        string       `json:"format"`
	FailureReason reasonDigest `json:"failure_reason"`
	OutputFiles   []string     `json:"output_files"`
	Tags          [][2]string  `json:"tags"`
}

type testDigest struct {
	Name                 string       `json:"name"`
	GNLabel              string       `json:"gn_label"`
	SourceLabel          string       `json:"source_label"`
	Result               string       `json:"result"`
	StartTime            string       `json:"start_time"`
	DurationMillis       int64        `json:"duration_milliseconds"`
	IsTestingFailureMode bool         `json:"is_testing_failure_mode"`
	Affected             bool         `json:"affected"`
	OutputDir            string       `json:"output_dir"`
	OutputFiles          []string     `json:"output_files"`
	Tags                 [][2]string  `json:"tags"`
	Owners               []string     `json:"owners"`
	FailureReason        reasonDigest `json:"failure_reason"`
	Cases                []caseDigest `json:"cases"`
}

type digest struct {
	Tests       []testDigest   `json:"tests"`
	Results     map[string]int `json:"results"`
	CaseResults map[string]int `json:"case_results"`
	// IsFailure as runtests.go defines it: anything but PASS and SKIP.
	Failures []string `json:"failures"`
	Outputs  []string `json:"outputs"`
}

func reason(r *FailureReason) reasonDigest {
	d := reasonDigest{Messages: []string{}, Traces: []string{}}
	if r == nil {
		return d
	}
	d.Present = true
	d.Truncated = r.TruncatedErrorsCount
	for _, e := range r.Errors {
		if e == nil {
			continue
		}
		d.Messages = append(d.Messages, e.Message)
		if e.Trace != "" {
			d.Traces = append(d.Traces, e.Trace)
		}
	}
	return d
}

func tags(ts []TestTag) [][2]string {
	out := [][2]string{}
	for _, t := range ts {
		out = append(out, [2]string{t.Key, t.Value})
	}
	return out
}

func strs(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: summaryreader SUMMARY_JSON")
		os.Exit(2)
	}
	content, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var summary TestSummary
	if err := json.Unmarshal(content, &summary); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
	d := digest{
		Tests:       []testDigest{},
		Results:     map[string]int{},
		CaseResults: map[string]int{},
		Failures:    []string{},
		Outputs:     []string{},
	}
	for name := range summary.Outputs {
		d.Outputs = append(d.Outputs, name)
	}
	sort.Strings(d.Outputs)
	for _, t := range summary.Tests {
		td := testDigest{
			Name:                 t.Name,
			GNLabel:              t.GNLabel,
			SourceLabel:          t.SourceLabel,
			Result:               string(t.Status),
			StartTime:            t.StartTime.UTC().Format(time.RFC3339Nano),
			DurationMillis:       t.DurationMillis,
			IsTestingFailureMode: t.IsTestingFailureMode,
			Affected:             t.Affected,
			OutputDir:            t.OutputDir,
			OutputFiles:          strs(t.OutputFiles),
			Tags:                 tags(t.Tags),
			Owners:               strs(t.Metadata.Owners),
			FailureReason:        reason(t.FailureReason),
			Cases:                []caseDigest{},
		}
		d.Results[string(t.Status)]++
		if t.Status != TestSuccess && t.Status != TestSkipped {
			d.Failures = append(d.Failures, t.Name)
		}
		for _, c := range t.Cases {
			td.Cases = append(td.Cases, caseDigest{
				DisplayName:   c.DisplayName,
				SuiteName:     c.SuiteName,
				CaseName:      c.CaseName,
				Status:        string(c.Status),
				DurationNanos: int64(c.Duration),
				Format:        c.Format,
				FailureReason: reason(c.FailureReason),
				OutputFiles:   strs(c.OutputFiles),
				Tags:          tags(c.Tags),
			})
			d.CaseResults[string(c.Status)]++
		}
		d.Tests = append(d.Tests, td)
	}
	out, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(string(out))
}
