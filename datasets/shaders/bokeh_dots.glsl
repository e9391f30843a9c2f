// Bokeh: three layers of soft random disks of different sizes over a dark gradient.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = fragCoord / iResolution.y;
    vec3 col = mix(kd_palette(0.0), kd_palette(0.3), uv.y) * 0.25;
    for (int layer = 0; layer < 3; layer++) {
        float scale = (3.0 + 6.0 * iParams[0].x) * (1.0 + float(layer));
        vec2 p = uv * scale + iTime + float(layer) * 13.7;
        vec2 id = floor(p);
        vec2 centre = 0.2 + 0.6 * kd_hash22(id);
        float radius = (0.1 + 0.3 * kd_hash21(id + 3.1)) * (0.5 + iParams[0].y);
        float d = length(fract(p) - centre);
        float disk = smoothstep(radius, radius * (0.7 - 0.5 * iParams[0].z), d);
        col += disk * kd_palette(kd_hash21(id) + 0.2 * float(layer)) * 0.6;
    }
    fragColor = vec4(col, 1.0);
}
