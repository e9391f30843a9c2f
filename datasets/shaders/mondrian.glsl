// Recursive random subdivision of the square into rectangles with black borders (Mondrian-like).
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = fragCoord / iResolution.xy;
    vec2 lo = vec2(0.0);
    vec2 hi = vec2(1.0);
    float id = iTime;
    int depth = 3 + int(iParams[0].x * 4.0);
    for (int i = 0; i < 7; i++) {
        if (i >= depth) break;
        float h = kd_hash11(id * 1.37 + float(i));
        float cut = 0.25 + 0.5 * kd_hash11(id * 2.11 + 0.5);
        bool vertical = (hi.x - lo.x) > (hi.y - lo.y) ? h < 0.8 : h < 0.2;
        if (vertical) {
            float x = mix(lo.x, hi.x, cut);
            if (uv.x < x) { hi.x = x; id = id * 2.0 + 1.0; } else { lo.x = x; id = id * 2.0 + 2.0; }
        } else {
            float y = mix(lo.y, hi.y, cut);
            if (uv.y < y) { hi.y = y; id = id * 2.0 + 1.0; } else { lo.y = y; id = id * 2.0 + 2.0; }
        }
        id = fract(id * 0.01731) * 1000.0;
    }
    vec2 d = min(uv - lo, hi - uv);
    float border = step(0.006 + 0.02 * iParams[0].y, min(d.x, d.y));
    float pick = kd_hash11(id);
    vec3 col = pick < 0.4 + 0.4 * iParams[0].z ? vec3(0.92) : kd_palette(pick * 3.0);
    fragColor = vec4(col * border, 1.0);
}
