#! Statistics, JSON, the human table and the SVG plot for bench/run.sh (POSIX awk; mawk is
#! enough). Input: "LABEL WALL_US MAXRSS_KB RC" lines sorted by label, then wall time.
#! Labels: start/RUNTIME/CONFIG (container start), hook/PATH/GPUS/VARIANT (the hook process
#! alone), plan/PATH/GPUS (`gres-oci-hook plan`). Variables: meta (JSON members), spank and
#! ldupdate (JSON or null), gpus ("1 2 4 8 16"), allgpu, json and svg (output paths).

# Quantile by linear interpolation between order statistics (R's type 7).
function q(arr, n, p,    h, lo) {
  if (n == 0) return 0
  h = (n - 1) * p + 1
  lo = int(h)
  if (lo >= n) return arr[n]
  return arr[lo] + (h - lo) * (arr[lo + 1] - arr[lo])
}

# Closes the label being read: stores its statistics in the global S[label, stat] table.
function flush(    i, j, t, n) {
  if (cur == "") return
  n = cnt
  S[cur, "n"] = n
  S[cur, "median"] = q(w, n, 0.5) / 1000
  S[cur, "p25"] = q(w, n, 0.25) / 1000
  S[cur, "p75"] = q(w, n, 0.75) / 1000
  S[cur, "min"] = w[1] / 1000
  S[cur, "max"] = w[n] / 1000
  # RSS values arrive unsorted: insertion sort (n is small).
  for (i = 2; i <= n; i++) {
    t = m[i]
    for (j = i - 1; j >= 1 && m[j] > t; j--) m[j + 1] = m[j]
    m[j + 1] = t
  }
  S[cur, "rss_median"] = q(m, n, 0.5)
  S[cur, "rss_max"] = m[n]
  labels[++nlabels] = cur
  HAVE[cur] = 1
}

{
  if ($1 != cur) { flush(); cur = $1; cnt = 0 }
  cnt++
  w[cnt] = $2
  m[cnt] = $3
}

function med(l) { return (l in HAVE) ? S[l, "median"] : -1 }
function num(x) { return x < 0 ? "null" : sprintf("%.3f", x) }
function ratio(a, b) { return (a < 0 || b <= 0) ? -1 : a / b }
function stat_json(l) {
  if (!(l in HAVE)) return "null"
  return sprintf("{\"n\": %d, \"median_ms\": %.3f, \"p25_ms\": %.3f, \"p75_ms\": %.3f, \"min_ms\": %.3f, \"max_ms\": %.3f, \"rss_median_kb\": %d, \"rss_max_kb\": %d}", \
    S[l, "n"], S[l, "median"], S[l, "p25"], S[l, "p75"], S[l, "min"], S[l, "max"], S[l, "rss_median"], S[l, "rss_max"])
}
function verdict(v, limit) { return v < 0 ? "n/a" : (v <= limit ? "PASS" : "FAIL") }

END {
  flush()
  ng = split(gpus, G, " ")
  nrt = split("runc crun", RT, " ")

  # ---- derived numbers ----
  for (r = 1; r <= nrt; r++) {
    rt = RT[r]
    bare[rt] = med("start/" rt "/bare")
    for (i = 1; i <= ng; i++) {
      n = G[i]
      cu[rt, n] = ratio(med("start/" rt "/cu-" n), bare[rt])
      cun[rt, n] = ratio(med("start/" rt "/cu-" n "-noldc"), bare[rt])
    }
    all[rt] = ratio(med("start/" rt "/all-" allgpu), bare[rt])
    alln[rt] = ratio(med("start/" rt "/all-" allgpu "-noldc"), bare[rt])
  }
  np = split("procfs nvml", P, " ")
  for (k = 1; k <= np; k++) {
    p = P[k]
    for (i = 1; i <= ng; i++) {
      n = G[i]
      b = "hook/" p "/" n "/"
      full[p, n] = med(b "full"); noldc[p, n] = med(b "noldc"); nocg[p, n] = med(b "noldc-nocg")
      plan[p, n] = med("plan/" p "/" n)
      ph_ldc[p, n] = (full[p, n] < 0 || noldc[p, n] < 0) ? -1 : full[p, n] - noldc[p, n]
      ph_cg[p, n] = (noldc[p, n] < 0 || nocg[p, n] < 0) ? -1 : noldc[p, n] - nocg[p, n]
      ph_ns[p, n] = (nocg[p, n] < 0 || plan[p, n] < 0) ? -1 : nocg[p, n] - plan[p, n]
      rss_full[p, n] = ((b "full") in HAVE) ? S[b "full", "rss_max"] : -1
      rss_noldc[p, n] = ((b "noldc") in HAVE) ? S[b "noldc", "rss_max"] : -1
    }
  }
  lo = G[1]; hi = G[ng]
  grow = ratio(full["procfs", hi], full["procfs", lo])
  grown = ratio(noldc["procfs", hi], noldc["procfs", lo])
  rssmax = -1; rssmaxn = -1
  for (i = 1; i <= ng; i++) {
    if (rss_full["procfs", G[i]] > rssmax) rssmax = rss_full["procfs", G[i]]
    if (rss_noldc["procfs", G[i]] > rssmaxn) rssmaxn = rss_noldc["procfs", G[i]]
  }
  spank_ratio = -1
  if (spank != "null" && match(spank, /"ratio": *[0-9.]+/)) {
    t = substr(spank, RSTART, RLENGTH); sub(/.*: */, "", t); spank_ratio = t + 0
  }

  # ---- the table ----
  printf "gres-oci benchmark  {%s}\n\n", meta
  printf "Container start (ms, wall of `RUNTIME run` of /bin/true; median [p25-p75]; ratio = median/bare median)\n"
  printf "  full = the hook as shipped (linker cache updated in-process, host ldconfig only as fallback)\n"
  printf "  noldc = the hook with ldconfig = \"\": no linker-cache step at all\n"
  printf "%-6s %-22s %24s %7s %24s %7s\n", "rt", "config", "full", "ratio", "noldc", "ratio"
  for (r = 1; r <= nrt; r++) {
    rt = RT[r]
    l = "start/" rt "/bare"
    printf "%-6s %-22s %8.2f [%6.2f-%6.2f] %7s\n", rt, "bare", med(l), S[l, "p25"], S[l, "p75"], "1.00"
    for (i = 1; i <= ng + 1; i++) {
      if (i <= ng) { c = "cu-" G[i]; name = G[i] " GPU compute,utility"; a = cu[rt, G[i]]; an = cun[rt, G[i]] }
      else { c = "all-" allgpu; name = allgpu " GPU all"; a = all[rt]; an = alln[rt] }
      l = "start/" rt "/" c; ln = l "-noldc"
      printf "%-6s %-22s %8.2f [%6.2f-%6.2f] %7.2f %8.2f [%6.2f-%6.2f] %7.2f\n", rt, name, \
        med(l), S[l, "p25"], S[l, "p75"], a, med(ln), S[ln, "p25"], S[ln, "p75"], an
    }
  }
  printf "\nThe hook alone (ms median; phases are differences of medians; RSS = max peak, KiB)\n"
  printf "%-6s %4s %8s %8s %8s | %8s %8s %8s %8s | %8s %8s\n", "path", "GPUs", "full", "noldc", "nocg", \
    "plan", "ns+mnt", "cgroup", "ldconfig", "RSS", "RSSnoldc"
  for (k = 1; k <= np; k++) {
    p = P[k]
    for (i = 1; i <= ng; i++) {
      n = G[i]
      printf "%-6s %4s %8.2f %8.2f %8.2f | %8.2f %8.2f %8.2f %8.2f | %8d %8d\n", p, n, full[p, n], \
        noldc[p, n], nocg[p, n], plan[p, n], ph_ns[p, n], ph_cg[p, n], ph_ldc[p, n], rss_full[p, n], rss_noldc[p, n]
    }
  }
  printf "  plan = config+bundle+inventory+discovery+plan (`gres-oci-hook plan`, own process)\n"
  printf "  ns+mnt = nocg - plan (fork, setns, mounts, links); cgroup = noldc - nocg; ldconfig = full - noldc\n"
  printf "\nExec cost (ms median): /bin/true %.3f; gres-oci-hook -version %.3f (+%.3f)", \
    med("exec/true"), med("exec/version"), med("exec/version") - med("exec/true")
  if (med("exec/version-cmp") > 0)
    printf "; --compare-hook -version %.3f (+%.3f); plan 1 GPU shipped %.3f, compared %.3f", \
      med("exec/version-cmp"), med("exec/version-cmp") - med("exec/true"), plan["procfs", 1], med("plan/cmp/1")
  printf "\n"
  upd = -1
  if (ldupdate != "null" && match(ldupdate, /"median_us": *[0-9.]+/)) {
    t = substr(ldupdate, RSTART, RLENGTH); sub(/.*: */, "", t); upd = t / 1000
  }
  printf "\nIn-process linker-cache update (updated_cache, 20 libraries into the image's cache): "
  if (upd < 0) printf "not measured\n"
  else {
    printf "%.3f ms median\n  %s\n", upd, ldupdate
    printf "  estimated hook with it (noldc + update), procfs: "
    for (i = 1; i <= ng; i++) printf "%s GPU %.2f ms%s", G[i], noldc["procfs", G[i]] + upd, i < ng ? ", " : "\n"
  }
  printf "\nSPANK plugin (srun -n1 true, with/without): "
  if (spank == "null") printf "[slot: not measured here; bench/spank.sh fills it]\n"
  else printf "%s\n", spank

  printf "\nTargets (issue 5)\n"
  printf "  runc %s GPUs compute,utility / bare <= 1.30: %.2f %s (noldc %.2f %s)\n", 8, cu["runc", 8], \
    verdict(cu["runc", 8], 1.30), cun["runc", 8], verdict(cun["runc", 8], 1.30)
  printf "  runc %s GPUs all / bare <= 1.50:              %.2f %s (noldc %.2f %s)\n", allgpu, all["runc"], \
    verdict(all["runc"], 1.50), alln["runc"], verdict(alln["runc"], 1.50)
  printf "  hook %s GPUs / %s GPU (procfs) <= 1.5:          %.2f %s (noldc %.2f %s)\n", hi, lo, grow, \
    verdict(grow, 1.5), grown, verdict(grown, 1.5)
  printf "  hook peak RSS, procfs path <= 8192 KiB:       %d %s (without the ldconfig child %d %s)\n", \
    rssmax, verdict(rssmax, 8192), rssmaxn, verdict(rssmaxn, 8192)
  printf "  srun -n1 true with/without plugin <= 1.05:    %s\n", \
    spank_ratio < 0 ? "[slot: bench/spank.sh]" : sprintf("%.2f %s", spank_ratio, verdict(spank_ratio, 1.05))

  # ---- JSON ----
  printf "{\n  \"schema\": 1,\n  %s,\n  \"samples\": {\n", meta > json
  for (i = 1; i <= nlabels; i++)
    printf "    \"%s\": %s%s\n", labels[i], stat_json(labels[i]), i < nlabels ? "," : "" > json
  printf "  },\n  \"container_start\": {\n" > json
  for (r = 1; r <= nrt; r++) {
    rt = RT[r]
    printf "    \"%s\": {\"bare_ms\": %s, \"compute_utility\": {", rt, num(bare[rt]) > json
    for (i = 1; i <= ng; i++)
      printf "\"%s\": {\"median_ms\": %s, \"ratio\": %s, \"noldc_median_ms\": %s, \"noldc_ratio\": %s}%s", G[i], \
        num(med("start/" rt "/cu-" G[i])), num(cu[rt, G[i]]), num(med("start/" rt "/cu-" G[i] "-noldc")), \
        num(cun[rt, G[i]]), i < ng ? ", " : "" > json
    printf "}, \"all\": {\"%s\": {\"median_ms\": %s, \"ratio\": %s, \"noldc_median_ms\": %s, \"noldc_ratio\": %s}}}%s\n", \
      allgpu, num(med("start/" rt "/all-" allgpu)), num(all[rt]), num(med("start/" rt "/all-" allgpu "-noldc")), \
      num(alln[rt]), r < nrt ? "," : "" > json
  }
  printf "  },\n  \"hook\": {\n" > json
  for (k = 1; k <= np; k++) {
    p = P[k]
    printf "    \"%s\": {", p > json
    for (i = 1; i <= ng; i++) {
      n = G[i]
      printf "\"%s\": {\"wall_ms\": %s, \"wall_noldc_ms\": %s, \"wall_noldc_nocgroup_ms\": %s, \"phases_ms\": {\"inventory_discovery_plan\": %s, \"namespace_and_mounts\": %s, \"cgroup\": %s, \"ldconfig\": %s}, \"peak_rss_kb\": %s, \"peak_rss_noldc_kb\": %s}%s", \
        n, num(full[p, n]), num(noldc[p, n]), num(nocg[p, n]), num(plan[p, n]), num(ph_ns[p, n]), num(ph_cg[p, n]), \
        num(ph_ldc[p, n]), rss_full[p, n] < 0 ? "null" : rss_full[p, n], rss_noldc[p, n] < 0 ? "null" : rss_noldc[p, n], \
        i < ng ? ", " : "" > json
    }
    printf "}%s\n", k < np ? "," : "" > json
  }
  printf "  },\n  \"ldcache_update\": %s,\n  \"spank\": %s,\n", ldupdate, spank > json
  printf "  \"targets\": {\"runc_cu8_ratio\": %s, \"runc_cu8_ratio_noldc\": %s, \"runc_all_ratio\": %s, \"runc_all_ratio_noldc\": %s, \"hook_growth_%s_over_%s\": %s, \"hook_growth_noldc\": %s, \"procfs_peak_rss_kb\": %s, \"procfs_peak_rss_noldc_kb\": %s, \"spank_ratio\": %s}\n}\n", \
    num(cu["runc", 8]), num(cun["runc", 8]), num(all["runc"]), num(alln["runc"]), hi, lo, num(grow), num(grown), \
    rssmax, rssmaxn, num(spank_ratio) > json
  close(json)

  # ---- SVG: container start against GPU count ----
  W = 760; H = 460; L = 70; R = 200; T = 50; B = 60
  ymax = 0
  for (r = 1; r <= nrt; r++)
    for (i = 1; i <= ng; i++)
      for (v = 0; v < 2; v++) {
        l = "start/" RT[r] "/cu-" G[i] (v ? "-noldc" : "")
        if ((l in HAVE) && S[l, "p75"] > ymax) ymax = S[l, "p75"]
      }
  for (r = 1; r <= nrt; r++) {
    l = "start/" RT[r] "/bare"
    if ((l in HAVE) && S[l, "p75"] > ymax) ymax = S[l, "p75"]
  }
  step = 5; while (ymax / step > 8) step *= 2
  ymax = (int(ymax / step) + 1) * step
  print "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" W "\" height=\"" H "\" font-family=\"sans-serif\" font-size=\"12\">" > svg
  print "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>" > svg
  printf "<text x=\"%d\" y=\"24\" font-size=\"15\">Container start (median, bars p25-p75) vs GPUs, compute,utility</text>\n", L > svg
  # Axes and grid.
  for (y = 0; y <= ymax; y += step) {
    py = T + (H - T - B) * (1 - y / ymax)
    printf "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", L, py, W - R, py > svg
    printf "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n", L - 6, py + 4, y > svg
  }
  for (i = 1; i <= ng; i++) {
    X[i] = L + 30 + (W - R - L - 60) * (ng > 1 ? (i - 1) / (ng - 1) : 0.5)
    printf "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%s</text>\n", X[i], H - B + 18, G[i] > svg
  }
  printf "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"black\"/>\n", L, H - B, W - R, H - B > svg
  printf "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"black\"/>\n", L, T, L, H - B > svg
  printf "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">GPUs injected (log scale)</text>\n", (L + W - R) / 2, H - 18 > svg
  printf "<text transform=\"translate(18,%d) rotate(-90)\" text-anchor=\"middle\">ms</text>\n", (T + H - B) / 2 > svg
  color["runc"] = "#1f77b4"; color["crun"] = "#d62728"
  ly = T + 10
  for (r = 1; r <= nrt; r++) {
    rt = RT[r]
    for (v = 0; v < 3; v++) {
      # v = 0: bare (flat), 1: hook, 2: hook without ldconfig.
      dash = v == 0 ? "6,4" : (v == 2 ? "2,3" : "")
      pts = ""
      if (v == 0 && (("start/" rt "/bare") in HAVE)) {
        # The bare run's p25-p75 as a band, to read the hook's points against.
        l = "start/" rt "/bare"
        y1 = T + (H - T - B) * (1 - S[l, "p75"] / ymax); y2 = T + (H - T - B) * (1 - S[l, "p25"] / ymax)
        printf "<rect x=\"%d\" y=\"%.1f\" width=\"%d\" height=\"%.1f\" fill=\"%s\" fill-opacity=\"0.08\"/>\n", L + 1, y1, W - R - L - 1, y2 - y1, color[rt] > svg
      }
      for (i = 1; i <= ng; i++) {
        l = "start/" rt "/" (v == 0 ? "bare" : "cu-" G[i] (v == 2 ? "-noldc" : ""))
        if (!(l in HAVE)) continue
        y = T + (H - T - B) * (1 - S[l, "median"] / ymax)
        pts = pts sprintf("%.1f,%.1f ", X[i], y)
        if (v > 0) {
          y1 = T + (H - T - B) * (1 - S[l, "p25"] / ymax); y2 = T + (H - T - B) * (1 - S[l, "p75"] / ymax)
          # Bars side by side: runc left of crun, the no-ldconfig variant right of the other.
          bx = X[i] + (r - 1.5) * 10 + (v == 2 ? 3 : -1)
          printf "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-opacity=\"%s\"/>\n", bx, y1, bx, y2, color[rt], v == 2 ? "0.5" : "1" > svg
          printf "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", X[i], y, v == 2 ? "white" : color[rt] > svg
          printf "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"none\" stroke=\"%s\"/>\n", X[i], y, color[rt] > svg
        }
      }
      if (pts != "")
        printf "<polyline points=\"%s\" fill=\"none\" stroke=\"%s\" stroke-width=\"2\" stroke-dasharray=\"%s\"/>\n", pts, color[rt], dash > svg
      printf "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"%s\" stroke-width=\"2\" stroke-dasharray=\"%s\"/>\n", W - R + 15, ly, W - R + 45, ly, color[rt], dash > svg
      printf "<text x=\"%d\" y=\"%d\">%s %s</text>\n", W - R + 50, ly + 4, rt, v == 0 ? "bare" : (v == 1 ? "+ hook" : "+ hook, no linker cache") > svg
      ly += 20
    }
    # The `all` capabilities point.
    l = "start/" rt "/all-" allgpu
    for (i = 1; i <= ng; i++) if (G[i] == allgpu && (l in HAVE)) {
      y = T + (H - T - B) * (1 - S[l, "median"] / ymax)
      if (y < T) y = T
      printf "<path d=\"M%.1f,%.1f l5,9 l-10,0 z\" fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\"/>\n", X[i] + 10, y - 5, color[rt] > svg
    }
  }
  printf "<path d=\"M%d,%d l5,9 l-10,0 z\" fill=\"none\" stroke=\"black\"/>\n", W - R + 30, ly - 5 > svg
  printf "<text x=\"%d\" y=\"%d\">+ hook, %s GPUs, all</text>\n", W - R + 50, ly + 4, allgpu > svg
  print "</svg>" > svg
  close(svg)
}
