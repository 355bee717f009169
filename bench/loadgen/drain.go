package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// drain empties a filled queue: -consumers loops of dequeue (max=-max, no wait) + batch ack, until
// -count messages are acked or the queue answers empty. Reports acked messages per second from the
// first dequeue to the last ack.
func drain(args []string) error {
	fs := flag.NewFlagSet("drain", flag.ExitOnError)
	base := fs.String("base", "", "server base URL")
	queue := fs.String("queue", "bench", "queue name")
	count := fs.Int64("count", 60000, "messages to drain")
	consumers := fs.Int("consumers", 4, "concurrent consumers (one connection each)")
	maxN := fs.Int("max", 100, "dequeue max")
	deadline := fs.Duration("deadline", 2*time.Minute, "give up after this long")
	fs.Parse(args)
	if err := loopbackURL(*base); err != nil {
		return err
	}
	api := strings.TrimRight(*base, "/") + "/api/v1/queues/" + *queue
	deqBody := []byte(fmt.Sprintf(`{"max":%d}`, *maxN))
	client := httpClient(*consumers, time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), *deadline)
	defer cancel()
	var acked, ackFail, errs, requests atomic.Int64
	var firstErr atomic.Value
	fail := func(err error) {
		errs.Add(1)
		firstErr.CompareAndSwap(nil, err.Error())
		cancel()
	}
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < *consumers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && acked.Load()+ackFail.Load() < *count {
				raw, err := post(ctx, client, api+"/dequeue", deqBody, 200)
				if err != nil {
					fail(err)
					return
				}
				requests.Add(1)
				var got struct {
					Messages []delivered `json:"messages"`
				}
				if err := json.Unmarshal(raw, &got); err != nil {
					fail(err)
					return
				}
				if len(got.Messages) == 0 {
					return // empty: the others hold what is left
				}
				items := make([]ackItem, len(got.Messages))
				for j, m := range got.Messages {
					items[j] = ackItem(m)
				}
				ab, _ := json.Marshal(map[string]any{"items": items})
				raw, err = post(ctx, client, api+"/ack", ab, 200)
				if err != nil {
					fail(err)
					return
				}
				requests.Add(1)
				var res struct {
					Results []struct {
						OK bool `json:"ok"`
					} `json:"results"`
				}
				if err := json.Unmarshal(raw, &res); err != nil {
					fail(err)
					return
				}
				for _, r := range res.Results {
					if r.OK {
						acked.Add(1)
					} else {
						ackFail.Add(1)
					}
				}
			}
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	out := map[string]any{
		"acked": acked.Load(), "ack_failures": ackFail.Load(), "requests": requests.Load(), "errors": errs.Load(),
		"seconds": secs, "rate": float64(acked.Load()) / secs,
	}
	if e := firstErr.Load(); e != nil {
		out["first_error"] = e
	}
	return emit(out)
}
