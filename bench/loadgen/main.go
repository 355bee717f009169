// Command rankq-load drives a RankQ (or null) server on loopback for the benchmark in bench/run.py.
//
// Subcommands, each printing one JSON object on stdout:
//
//	http-paced   open-loop constant-rate POSTs; latency counted from each request's scheduled time
//	pairs        producers (batch enqueue) and consumers (dequeue max=N + batch ack) together
//	fill         enqueue a fixed number of messages in batches, as fast as the server takes them
//	grpc-stream  EnqueueStream: closed loop with a window per stream, or paced open loop (-rate)
//	grpc-unary   unary Enqueue calls, one message each, from concurrent clients (closed loop)
//	drain        dequeue (max=N) + batch ack of a filled queue until it is empty
//
// With RANKQ_API_TOKEN set, every request carries it as a bearer token (HTTP header, gRPC metadata).
//
// Every run is bounded by a message count and a deadline, and refuses non-loopback targets.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: rankq-load http-paced|pairs|fill|grpc-stream|grpc-unary|drain [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "http-paced":
		err = httpPaced(os.Args[2:])
	case "pairs":
		err = pairs(os.Args[2:])
	case "fill":
		err = fill(os.Args[2:])
	case "grpc-stream":
		err = grpcStream(os.Args[2:])
	case "grpc-unary":
		err = grpcUnary(os.Args[2:])
	case "drain":
		err = drain(os.Args[2:])
	default:
		err = fmt.Errorf("unknown subcommand %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "rankq-load:", err)
		os.Exit(1)
	}
}

// ---- shared helpers ---------------------------------------------------------------------------

func emit(v any) error {
	enc := json.NewEncoder(os.Stdout)
	return enc.Encode(v)
}

// loopbackOnly rejects any target that is not a loopback address.
func loopbackOnly(hostport string) error {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return err
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("target %q is not a loopback address", hostport)
	}
	return nil
}

func loopbackURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	return loopbackOnly(u.Host)
}

// payload returns a JSON string literal of exactly n bytes (quotes included).
func payload(n int) string {
	if n < 2 {
		n = 2
	}
	return `"` + strings.Repeat("x", n-2) + `"`
}

func httpClient(conns int, timeout time.Duration) *http.Client {
	tr := &http.Transport{
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		MaxConnsPerHost:     conns,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
		IdleConnTimeout:     30 * time.Second,
	}
	return &http.Client{Transport: tr, Timeout: timeout}
}

// post sends a JSON body and reads the whole answer; a status other than want is an error.
func post(ctx context.Context, c *http.Client, u string, body []byte, want int) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	authorize(req)
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != want {
		return out, fmt.Errorf("status %d: %.200s", resp.StatusCode, out)
	}
	return out, nil
}

type latencySummary struct {
	Count  int     `json:"count"`
	P50Ms  float64 `json:"p50_ms"`
	P90Ms  float64 `json:"p90_ms"`
	P99Ms  float64 `json:"p99_ms"`
	P999Ms float64 `json:"p999_ms"`
	MaxMs  float64 `json:"max_ms"`
	MeanMs float64 `json:"mean_ms"`
}

func summarize(lat []time.Duration) latencySummary {
	if len(lat) == 0 {
		return latencySummary{}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	q := func(p float64) float64 {
		i := int(p*float64(len(lat))+0.5) - 1
		if i < 0 {
			i = 0
		}
		if i >= len(lat) {
			i = len(lat) - 1
		}
		return ms(lat[i])
	}
	var sum time.Duration
	for _, d := range lat {
		sum += d
	}
	return latencySummary{
		Count: len(lat), P50Ms: q(0.50), P90Ms: q(0.90), P99Ms: q(0.99), P999Ms: q(0.999),
		MaxMs: ms(lat[len(lat)-1]), MeanMs: ms(sum / time.Duration(len(lat))),
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// schedule feeds the send times of an open-loop run into a channel: rate per second for the
// duration, never more than limit. Sends that find every worker busy wait in the channel, and
// that wait counts in their latency (no coordinated omission).
func schedule(ctx context.Context, start time.Time, rate float64, duration time.Duration, limit int) <-chan time.Time {
	ch := make(chan time.Time, limit)
	go func() {
		defer close(ch)
		interval := time.Duration(float64(time.Second) / rate)
		for i := 0; i < limit; i++ {
			at := start.Add(time.Duration(i) * interval)
			if at.Sub(start) >= duration {
				return
			}
			if d := time.Until(at); d > 0 {
				select {
				case <-time.After(d):
				case <-ctx.Done():
					return
				}
			}
			select {
			case ch <- at:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch
}

// ---- http-paced -------------------------------------------------------------------------------

func httpPaced(args []string) error {
	fs := flag.NewFlagSet("http-paced", flag.ExitOnError)
	target := fs.String("url", "", "POST target")
	body := fs.String("body", "", "request body (JSON)")
	status := fs.Int("status", 201, "expected status")
	rate := fs.Float64("rate", 1000, "requests per second")
	duration := fs.Duration("duration", 10*time.Second, "length of the paced run, warm-up included")
	warmup := fs.Duration("warmup", 2*time.Second, "leading part left out of the latency figures")
	conns := fs.Int("conns", 64, "most connections (and requests in flight)")
	timeout := fs.Duration("timeout", 10*time.Second, "per-request timeout")
	fs.Parse(args)
	if err := loopbackURL(*target); err != nil {
		return err
	}
	limit := int(*rate*duration.Seconds()) + 1
	client := httpClient(*conns, *timeout)
	ctx, cancel := context.WithTimeout(context.Background(), *duration+*timeout+5*time.Second)
	defer cancel()
	// Open the connections before the clock starts.
	var wg sync.WaitGroup
	for i := 0; i < *conns; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); post(ctx, client, *target, []byte(*body), *status) }()
	}
	wg.Wait()

	start := time.Now().Add(50 * time.Millisecond)
	ticks := schedule(ctx, start, *rate, *duration, limit)
	var mu sync.Mutex
	lat := make([]time.Duration, 0, limit)
	var sent, errs atomic.Int64
	var firstErr atomic.Value
	b := []byte(*body)
	for i := 0; i < *conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for at := range ticks {
				sent.Add(1)
				_, err := post(ctx, client, *target, b, *status)
				d := time.Since(at)
				if err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				if at.Sub(start) >= *warmup {
					mu.Lock()
					lat = append(lat, d)
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	out := map[string]any{
		"rate": *rate, "sent": sent.Load(), "errors": errs.Load(), "seconds": elapsed.Seconds(),
		"achieved_rate": float64(sent.Load()) / elapsed.Seconds(), "latency": summarize(lat),
	}
	if e := firstErr.Load(); e != nil {
		out["first_error"] = e
	}
	return emit(out)
}

// ---- pairs ------------------------------------------------------------------------------------

type delivered struct {
	ID         int64  `json:"id"`
	LeaseToken string `json:"lease_token"`
}

type ackItem struct {
	ID         int64  `json:"id"`
	LeaseToken string `json:"lease_token"`
}

func pairs(args []string) error {
	fs := flag.NewFlagSet("pairs", flag.ExitOnError)
	base := fs.String("base", "", "server base URL, e.g. http://127.0.0.1:8080")
	queue := fs.String("queue", "bench", "queue name")
	producers := fs.Int("producers", 4, "producer connections")
	consumers := fs.Int("consumers", 4, "consumer connections")
	batch := fs.Int("batch", 100, "messages per enqueue request")
	maxN := fs.Int("max", 100, "dequeue max")
	wait := fs.Float64("wait", 1, "dequeue long-poll seconds")
	backlog := fs.Int64("backlog", 20000, "producers pause while this many messages are enqueued but not acked")
	size := fs.Int("payload-bytes", 100, "payload size")
	duration := fs.Duration("duration", 10*time.Second, "measured time")
	warmup := fs.Duration("warmup", 2*time.Second, "time before measuring")
	fs.Parse(args)
	if err := loopbackURL(*base); err != nil {
		return err
	}
	api := strings.TrimRight(*base, "/") + "/api/v1/queues/" + *queue
	msgs := make([]string, *batch)
	for i := range msgs {
		msgs[i] = `{"payload":` + payload(*size) + `}`
	}
	enqBody := []byte(`{"messages":[` + strings.Join(msgs, ",") + `]}`)
	deqBody := []byte(fmt.Sprintf(`{"max":%d,"wait":%g}`, *maxN, *wait))
	client := httpClient(*producers+*consumers, 30*time.Second)

	total := *warmup + *duration
	ctx, cancel := context.WithTimeout(context.Background(), total)
	defer cancel()
	var enq, acked, ackFail, errs atomic.Int64
	var firstErr atomic.Value
	fail := func(err error) {
		if ctx.Err() != nil {
			return
		}
		errs.Add(1)
		firstErr.CompareAndSwap(nil, err.Error())
		time.Sleep(10 * time.Millisecond)
	}
	var wg sync.WaitGroup
	for i := 0; i < *producers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if enq.Load()-acked.Load()-ackFail.Load() > *backlog {
					time.Sleep(time.Millisecond)
					continue
				}
				if _, err := post(ctx, client, api+"/messages/batch", enqBody, 201); err != nil {
					fail(err)
					continue
				}
				enq.Add(int64(*batch))
			}
		}()
	}
	for i := 0; i < *consumers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				raw, err := post(ctx, client, api+"/dequeue", deqBody, 200)
				if err != nil {
					fail(err)
					continue
				}
				var got struct {
					Messages []delivered `json:"messages"`
				}
				if err := json.Unmarshal(raw, &got); err != nil {
					fail(err)
					continue
				}
				if len(got.Messages) == 0 {
					continue
				}
				items := make([]ackItem, len(got.Messages))
				for j, m := range got.Messages {
					items[j] = ackItem(m)
				}
				ab, _ := json.Marshal(map[string]any{"items": items})
				raw, err = post(ctx, client, api+"/ack", ab, 200)
				if err != nil {
					fail(err)
					continue
				}
				var res struct {
					Results []struct {
						OK bool `json:"ok"`
					} `json:"results"`
				}
				if err := json.Unmarshal(raw, &res); err != nil {
					fail(err)
					continue
				}
				var ok, bad int64
				for _, r := range res.Results {
					if r.OK {
						ok++
					} else {
						bad++
					}
				}
				acked.Add(ok)
				ackFail.Add(bad)
			}
		}()
	}
	time.Sleep(*warmup)
	e0, a0, t0 := enq.Load(), acked.Load(), time.Now()
	<-ctx.Done()
	e1, a1, secs := enq.Load(), acked.Load(), time.Since(t0).Seconds()
	wg.Wait()
	out := map[string]any{
		"seconds": secs, "enqueued": e1 - e0, "acked": a1 - a0,
		"enqueue_rate": float64(e1-e0) / secs, "pairs_rate": float64(a1-a0) / secs,
		"ack_failures": ackFail.Load(), "errors": errs.Load(),
	}
	if e := firstErr.Load(); e != nil {
		out["first_error"] = e
	}
	return emit(out)
}

// ---- fill -------------------------------------------------------------------------------------

func fill(args []string) error {
	fs := flag.NewFlagSet("fill", flag.ExitOnError)
	base := fs.String("base", "", "server base URL")
	queue := fs.String("queue", "bench", "queue name")
	count := fs.Int("count", 1_000_000, "messages to enqueue")
	batch := fs.Int("batch", 1000, "messages per request")
	conns := fs.Int("conns", 4, "concurrent requests")
	size := fs.Int("payload-bytes", 100, "payload size")
	deadline := fs.Duration("deadline", 5*time.Minute, "give up after this long")
	fs.Parse(args)
	if err := loopbackURL(*base); err != nil {
		return err
	}
	api := strings.TrimRight(*base, "/") + "/api/v1/queues/" + *queue + "/messages/batch"
	msgs := make([]string, *batch)
	for i := range msgs {
		msgs[i] = `{"payload":` + payload(*size) + `}`
	}
	body := []byte(`{"messages":[` + strings.Join(msgs, ",") + `]}`)
	requests := (*count + *batch - 1) / *batch
	client := httpClient(*conns, time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), *deadline)
	defer cancel()
	var next, done atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < *conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && next.Add(1) <= int64(requests) {
				if _, err := post(ctx, client, api, body, 201); err != nil {
					firstErr.CompareAndSwap(nil, err.Error())
					cancel()
					return
				}
				done.Add(int64(*batch))
			}
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	out := map[string]any{"enqueued": done.Load(), "seconds": secs, "rate": float64(done.Load()) / secs}
	if e := firstErr.Load(); e != nil {
		out["first_error"] = e
		emit(out)
		return errors.New(e.(string))
	}
	return emit(out)
}
